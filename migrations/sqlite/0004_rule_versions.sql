-- Rule versions (DESIGN 3: an execution runs the rule version it matched). Each distinct rule
-- definition is stored once by its hash; an execution names the version it was created with.
CREATE TABLE rule_versions (
    hash        TEXT PRIMARY KEY,              -- SHA-256 of the definition
    rule        TEXT NOT NULL,                 -- the rule's name
    definition  TEXT NOT NULL,                 -- canonical JSON: {"rule": ..., "vars": ...}
    first_seen  TEXT NOT NULL
);

-- NULL for executions made before versions were recorded: they run the rule in force.
ALTER TABLE executions ADD COLUMN rule_version TEXT;
