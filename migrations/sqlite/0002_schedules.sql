-- Schedules: the last tick each schedule rule fired, under the expression it fired with.
CREATE TABLE schedule_state (
    rule          TEXT PRIMARY KEY,
    fingerprint   TEXT NOT NULL,              -- cron + time zone, or the interval
    last_tick_at  TEXT NOT NULL               -- scheduled time of the last tick fired or skipped
);

-- Every tick fired, once: the key makes a second fire of the same tick impossible.
CREATE TABLE schedule_ticks (
    rule          TEXT NOT NULL,
    scheduled_at  TEXT NOT NULL,
    fired_at      TEXT NOT NULL,
    result        TEXT NOT NULL,              -- fired | caught_up
    PRIMARY KEY (rule, scheduled_at)
);
