-- Flow control per key (DESIGN 2.5). A waiting execution stays `pending` (the claim finds it
-- when its wait ends) with `wait_kind` set; the admin API shows it as `waiting`.
ALTER TABLE executions ADD COLUMN flow_key TEXT;          -- its group: the rendered key, '' = the rule
ALTER TABLE executions ADD COLUMN admitted_at TEXT;       -- when the gate let it start
ALTER TABLE executions ADD COLUMN wait_kind TEXT;         -- queue | throttle | quiet_hours
ALTER TABLE executions ADD COLUMN wait_until TEXT;
ALTER TABLE executions ADD COLUMN wait_behind TEXT;
ALTER TABLE executions ADD COLUMN expires_at TEXT;
ALTER TABLE executions ADD COLUMN cancel_requested TEXT;  -- asked while it ran: stop at the next step
CREATE INDEX executions_group ON executions (rule, flow_key, created_at) WHERE flow_key IS NOT NULL;
-- A run flowd cancelled with its execution: no handler fires for it any more.
ALTER TABLE followed ADD COLUMN cancelled_at TEXT;
CREATE INDEX followed_execution ON followed (execution_id) WHERE terminal = 0;
-- idempotency_key: the execution a rendered key started, until its window ends.
CREATE TABLE idempotency (
    rule          TEXT NOT NULL,
    key           TEXT NOT NULL,
    execution_id  TEXT NOT NULL,
    until         TEXT NOT NULL,
    PRIMARY KEY (rule, key)
);
-- `deadline` on a create step: when the run is late, and when its deadline handler fired.
ALTER TABLE followed ADD COLUMN deadline_at TEXT;
ALTER TABLE followed ADD COLUMN deadline_fired_at TEXT;
CREATE INDEX followed_deadline ON followed (deadline_at) WHERE deadline_at IS NOT NULL AND deadline_fired_at IS NULL AND terminal = 0;
-- A handler execution's parent (the execution whose run changed): cancelled with it.
ALTER TABLE executions ADD COLUMN parent_id TEXT;
CREATE INDEX executions_parent ON executions (parent_id) WHERE parent_id IS NOT NULL;
