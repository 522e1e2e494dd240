-- An https BMC's certificate, pinned by its SHA-256 fingerprint (most BMCs serve a
-- self-signed one); none: the web PKI must trust it.
ALTER TABLE nodes ADD COLUMN bmc_fingerprint TEXT;
