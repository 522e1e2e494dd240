-- PostgreSQL's 0008 adds change-notice triggers for servers sharing a database.
-- A SQLite file has one server, which wakes its own watchers: nothing to add.
SELECT 1;
