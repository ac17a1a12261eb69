-- A sweep execution (`for_each: { list }`) is marked by its own column, not by a marker string
-- in `handler_step`.
ALTER TABLE executions ADD COLUMN sweep INTEGER NOT NULL DEFAULT 0;
UPDATE executions SET sweep = 1, handler_step = NULL WHERE handler_step = '@for_each';
