-- On PostgreSQL a digest job's body is now kept by the body purge and no longer by a
-- foreign key (see migrations/postgres/0017_bodies_by_age.sql). SQLite keeps its key
-- and index: dropping a key means rebuilding the table, and SQLite's one writer never
-- runs a pass and a purge side by side. Finished mail lets go of its body here too.
UPDATE mail_jobs SET body_id = NULL WHERE body_id IS NOT NULL AND status <> 'queued';
