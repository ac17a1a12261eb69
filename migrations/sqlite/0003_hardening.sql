-- Hardening II: adoption notes, inbox deferral without head-of-line waits, reconcile backoff.

-- Why a step record is what it is, e.g. "adopted the FlowRun an attempt without an answer made".
ALTER TABLE step_runs ADD COLUMN note TEXT;

-- A webhook for a run flowd does not know yet waits here, not at the head of the inbox: the
-- processor skips it until `deferred_until`, and recording the run (`defer_key` = its id)
-- releases it at once.
ALTER TABLE events ADD COLUMN deferred_until TEXT;
ALTER TABLE events ADD COLUMN defer_key TEXT;
CREATE INDEX events_deferred ON events (defer_key) WHERE processed_at IS NULL AND defer_key IS NOT NULL;

-- Reconciliation: a run whose poll failed is not polled again before `poll_after` (backoff per
-- run), and a run Recrubo answers 404 for is marked gone and no longer polled.
ALTER TABLE followed ADD COLUMN poll_after TEXT;
ALTER TABLE followed ADD COLUMN poll_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE followed ADD COLUMN gone_at TEXT;
