-- Mutual CHAP: the secret the node's target answers with, so the node knows it
-- reached ramboot's target. Set through the API (on: generated once; off: NULL),
-- handed only to the target and the node's plan, never logged or shown.
ALTER TABLE nodes ADD COLUMN mutual_chap_secret TEXT;
