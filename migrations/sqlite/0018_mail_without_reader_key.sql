-- On PostgreSQL a mail no longer has a foreign key to its reader (see
-- migrations/postgres/0018_mail_without_reader_key.sql). SQLite keeps its key:
-- dropping one means rebuilding the table, and its one writer takes no lock for it.
SELECT 1;
