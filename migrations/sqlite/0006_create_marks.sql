-- An execution whose first step creates a resource: claiming it sets that step's in-doubt
-- marker in the same write (no separate begin_step write).
ALTER TABLE executions ADD COLUMN first_step_creates INTEGER NOT NULL DEFAULT 0;
