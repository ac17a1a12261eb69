-- flowd's state on SQLite. Times are RFC 3339 UTC text (they sort as text).

-- The inbox: every accepted event, stored before the 2xx, processed asynchronously.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,              -- event | recrubo | emit | manual | reconcile
    event_type    TEXT NOT NULL,              -- external type, or resource/event for Recrubo
    dedup_key     TEXT UNIQUE,                -- WebhookLog id, Idempotency-Key, event id
    payload       TEXT NOT NULL,              -- JSON
    received_at   TEXT NOT NULL,
    processed_at  TEXT
);
CREATE INDEX events_unprocessed ON events (id) WHERE processed_at IS NULL;

-- Executions of a rule (or of an on_status handler) and their progress.
CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    rule             TEXT NOT NULL,
    event_id         INTEGER,
    handler_step     TEXT,                    -- for handlers: the step whose run changed
    handler_status   TEXT,                    -- and the status it changed to
    status           TEXT NOT NULL,           -- pending | succeeded | failed | skipped | orphaned
    context          TEXT NOT NULL,           -- JSON, secrets never included
    next_step        INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    lease_until      TEXT,
    step_started_at  TEXT,                    -- set while a step is in flight (crash check)
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX executions_due ON executions (next_attempt_at) WHERE status = 'pending';

-- Every step attempt's record: rendered input (secrets redacted), output, error.
CREATE TABLE step_runs (
    execution_id  TEXT NOT NULL,
    step_index    INTEGER NOT NULL,
    step_id       TEXT,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,              -- succeeded | failed | retrying | skipped
    attempts      INTEGER NOT NULL,
    input         TEXT,
    output        TEXT,
    error         TEXT,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    PRIMARY KEY (execution_id, step_index)
);

-- Runs and generations flowd started and follows.
CREATE TABLE followed (
    resource_id     TEXT PRIMARY KEY,
    resource_type   TEXT NOT NULL,            -- flowRuns | flowGenerations
    rule            TEXT NOT NULL,
    step_id         TEXT,
    execution_id    TEXT NOT NULL,
    context         TEXT NOT NULL,            -- the starting execution's context
    status          TEXT NOT NULL,
    remote_updated_at TEXT,                   -- Recrubo's updatedAt of the last change seen
    changed_at      TEXT NOT NULL,            -- when flowd last saw a change
    terminal        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX followed_stale ON followed (changed_at) WHERE terminal = 0;

-- Each (resource, status) fires once.
CREATE TABLE fired (
    resource_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    fired_at     TEXT NOT NULL,
    PRIMARY KEY (resource_id, status)
);

-- Steps that exhausted their attempts or failed fatally.
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id  TEXT NOT NULL,
    step_index    INTEGER NOT NULL,
    rule          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    error         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    retried_at    TEXT
);
