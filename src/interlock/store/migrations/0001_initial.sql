-- Jobs, their events, and the lanes' paused flags.

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL,
    lane             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    -- Claim order: created_at - priority * lane aging step. A job that has
    -- waited one aging step ranks level with a new job one priority higher,
    -- so nothing starves and the claim stays an index range scan.
    order_key        REAL    NOT NULL,
    project          TEXT,
    role             TEXT,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    key              TEXT,
    trigger          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    parent_id        INTEGER REFERENCES jobs (id),
    root_id          INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    not_before       REAL    NOT NULL,
    lease_holder     TEXT,
    lease_expires_at REAL,
    heartbeat_at     REAL,
    result           TEXT,
    error            TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL
);

-- The idempotency key: at most one live job holds a key.
CREATE UNIQUE INDEX jobs_live_key ON jobs (key)
    WHERE key IS NOT NULL AND state NOT IN ('done', 'dead', 'cancelled');

CREATE INDEX jobs_claim_order ON jobs (lane, order_key) WHERE state = 'queued';
CREATE INDEX jobs_claim_due ON jobs (lane, not_before) WHERE state = 'queued';
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_root ON jobs (root_id);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    at         REAL    NOT NULL,
    type       TEXT    NOT NULL,
    from_state TEXT,
    to_state   TEXT,
    trigger    TEXT,
    note       TEXT    NOT NULL,
    data       TEXT
);

CREATE INDEX events_by_job ON events (job_id, id);

CREATE TABLE lanes (
    name          TEXT PRIMARY KEY,
    paused        INTEGER NOT NULL DEFAULT 0,
    changed_at    REAL,
    paused_reason TEXT
);
