-- flowd's state on PostgreSQL: the same tables as on SQLite (migrations/sqlite, 0001-0005 in
-- one), with real types. JSON is kept as TEXT, byte for byte as flowd wrote it (JSONB would
-- reorder keys and the inbox's byte bound counts the stored bytes). Several flowd instances
-- share these tables: every "at most once" is a unique key here, not a check in a process.

-- The inbox: every accepted event, stored before the 2xx, processed asynchronously.
CREATE TABLE events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          TEXT NOT NULL,             -- event | recrubo | emit | manual | reconcile | schedule
    event_type      TEXT NOT NULL,             -- external type, or resource/event for Recrubo
    dedup_key       TEXT UNIQUE,               -- WebhookLog id, Idempotency-Key, event id
    payload         TEXT NOT NULL,             -- JSON
    received_at     TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ,
    deferred_until  TIMESTAMPTZ,               -- a webhook of a run not known yet waits until then
    defer_key       TEXT,                      -- that run's id; recording it releases the event
    order_key       TEXT,                      -- a run's status changes go one at a time, in order
    claimed_until   TIMESTAMPTZ                -- an instance's processor has it until then
);
CREATE INDEX events_unprocessed ON events (id) WHERE processed_at IS NULL;
CREATE INDEX events_ordered ON events (order_key, id) WHERE processed_at IS NULL AND order_key IS NOT NULL;
CREATE INDEX events_deferred ON events (defer_key) WHERE processed_at IS NULL AND defer_key IS NOT NULL;

-- Executions of a rule (or of an on_status handler) and their progress.
CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    rule             TEXT NOT NULL,
    event_id         BIGINT,
    handler_step     TEXT,                     -- for handlers: the step whose run changed
    handler_status   TEXT,                     -- and the status it changed to
    status           TEXT NOT NULL,            -- pending | succeeded | failed | skipped | orphaned
    context          TEXT NOT NULL,            -- JSON, secrets never included
    next_step        BIGINT NOT NULL DEFAULT 0,
    attempt          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    lease_until      TIMESTAMPTZ,
    lease_owner      TEXT,                     -- the instance holding the lease
    step_started_at  TIMESTAMPTZ,              -- set while a create is in flight (crash check)
    last_error       TEXT,
    rule_version     TEXT,                     -- the rule version it runs (rule_versions.hash)
    sweep            BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX executions_due ON executions (next_attempt_at) WHERE status = 'pending';
CREATE INDEX executions_created ON executions (created_at DESC);
CREATE INDEX executions_event ON executions (event_id) WHERE event_id IS NOT NULL;

-- Every step attempt's record: rendered input (secrets redacted), output, error.
CREATE TABLE step_runs (
    execution_id  TEXT NOT NULL,
    step_index    BIGINT NOT NULL,
    step_id       TEXT,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,               -- succeeded | failed | retrying | skipped
    attempts      BIGINT NOT NULL,
    input         TEXT,
    output        TEXT,
    error         TEXT,
    note          TEXT,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    PRIMARY KEY (execution_id, step_index)
);

-- Runs and generations flowd started and follows.
CREATE TABLE followed (
    resource_id        TEXT PRIMARY KEY,
    resource_type      TEXT NOT NULL,          -- flowRuns | flowGenerations
    rule               TEXT NOT NULL,
    step_id            TEXT,
    execution_id       TEXT NOT NULL,
    context            TEXT NOT NULL,          -- the starting execution's context
    status             TEXT NOT NULL,
    remote_updated_at  TIMESTAMPTZ,            -- Recrubo's updatedAt of the last change seen
    changed_at         TIMESTAMPTZ NOT NULL,   -- when flowd last saw a change (or checked)
    terminal           BOOLEAN NOT NULL DEFAULT FALSE,
    poll_after         TIMESTAMPTZ,            -- a failed poll backs the run off until then
    poll_failures      BIGINT NOT NULL DEFAULT 0,
    gone_at            TIMESTAMPTZ             -- Recrubo answered 404: no longer polled
);
CREATE INDEX followed_stale ON followed (changed_at) WHERE NOT terminal;

-- Each (resource, status) fires once.
CREATE TABLE fired (
    resource_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    fired_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (resource_id, status)
);

-- Steps that exhausted their attempts or failed fatally.
CREATE TABLE dead_letters (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id  TEXT NOT NULL,
    step_index    BIGINT NOT NULL,
    rule          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    error         TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    retried_at    TIMESTAMPTZ
);

-- Schedules: the last tick each schedule rule fired, under the expression it fired with.
CREATE TABLE schedule_state (
    rule          TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,               -- cron + time zone, or the interval
    last_tick_at  TIMESTAMPTZ NOT NULL         -- scheduled time of the last tick fired or skipped
);

-- Every tick fired, once: the key makes a second fire of the same tick impossible, whichever
-- instance tries.
CREATE TABLE schedule_ticks (
    rule          TEXT NOT NULL,
    scheduled_at  TIMESTAMPTZ NOT NULL,
    fired_at      TIMESTAMPTZ NOT NULL,
    result        TEXT NOT NULL,               -- fired | caught_up
    PRIMARY KEY (rule, scheduled_at)
);

-- Rule versions (DESIGN 3): each distinct rule definition stored once by its hash.
CREATE TABLE rule_versions (
    hash        TEXT PRIMARY KEY,              -- SHA-256 of the definition
    rule        TEXT NOT NULL,
    definition  TEXT NOT NULL,                 -- canonical JSON: {"rule": ..., "vars": ...}
    first_seen  TIMESTAMPTZ NOT NULL
);

-- The instances sharing this database: each beats every few seconds (GET /api/v1/cluster).
CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    rules_hash    TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);
