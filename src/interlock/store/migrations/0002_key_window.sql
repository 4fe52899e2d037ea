-- Keys that outlive their job (a kind's key window) are looked up by key
-- among finished jobs too.
CREATE INDEX jobs_by_key ON jobs (key, finished_at) WHERE key IS NOT NULL;
