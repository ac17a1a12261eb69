-- An execution whose first step creates a resource: claiming it sets that step's in-doubt
-- marker in the same statement (no separate begin_step round trip and commit).
ALTER TABLE executions ADD COLUMN first_step_creates BOOLEAN NOT NULL DEFAULT FALSE;
