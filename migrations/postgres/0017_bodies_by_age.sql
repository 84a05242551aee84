-- A digest job's body is kept by the body purge, not by a foreign key. The key cost
-- every queued digest a locking lookup of its shared body row (two lanes of a pass
-- locking the same bodies share those locks), and its index an entry per job: half
-- of the job insert's time in a fan-out. The purge deletes only bodies older than a
-- day that no queued mail names (a finished mail lets go of its body), and a pass
-- that reuses a body older than an hour first moves its age forward, in a
-- transaction committed before any mail names it, so the purge cannot take it from
-- under the pass.
UPDATE mail_jobs SET body_id = NULL WHERE body_id IS NOT NULL AND status <> 'queued';
ALTER TABLE mail_jobs DROP CONSTRAINT IF EXISTS mail_jobs_body_id_fkey;
DROP INDEX IF EXISTS mail_jobs_body;
