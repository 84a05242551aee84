-- The mail queue and the due readers are read oldest first with the id as the
-- tie-break (`ORDER BY next_attempt_at, id`, `ORDER BY next_slot_at, id`). When
-- thousands share one instant (a digest pass queues all its mail at once; 100,000
-- readers want their digest at 07:00), an index on the instant alone makes every
-- claim sort all of them to find the first few; with the id in the index a claim
-- reads only the rows it takes.
CREATE INDEX mail_jobs_due_in_order ON mail_jobs (next_attempt_at, id) WHERE status = 'queued';
DROP INDEX mail_jobs_due;
CREATE INDEX subscribers_due_in_order ON subscribers (next_slot_at, id) WHERE status = 'confirmed';
DROP INDEX subscribers_due;
