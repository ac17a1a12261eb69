-- Who holds what, for several instances: an inbox claim names its instance (only the holder
-- gives it back), a step record names the instance that ran it (the demo and the status page
-- say which instance did what).
ALTER TABLE events ADD COLUMN claimed_by TEXT;
ALTER TABLE step_runs ADD COLUMN instance TEXT;
