-- What a handler reported of its progress, while it runs.
ALTER TABLE jobs ADD COLUMN progress TEXT;
-- Times the job was running when its daemon died: counted apart from its
-- attempts, so a crash loop does not use up the attempts of jobs that did not
-- cause it (jobs.max_crashes stops one that does).
ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
-- Attempts given back at the handler's request (a rate limit), bounded by
-- jobs.max_deferrals.
ALTER TABLE jobs ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;
-- What the submit asked for (domain.request_fingerprint): a key reused for a
-- different request is refused, not silently collapsed.
ALTER TABLE jobs ADD COLUMN request_hash TEXT;

-- Who paused or resumed a lane, and why: the audit trail of lanes.
ALTER TABLE lanes ADD COLUMN changed_by TEXT;
CREATE TABLE lane_events (
    id     INTEGER PRIMARY KEY,
    lane   TEXT    NOT NULL,
    at     REAL    NOT NULL,
    paused INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    reason TEXT    NOT NULL
);
CREATE INDEX lane_events_by_lane ON lane_events (lane, id);
