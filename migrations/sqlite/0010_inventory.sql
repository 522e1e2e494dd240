-- The node inventory in git (issue 14) and BMC power.
-- The node's BMC: its Redfish ComputerSystem URL, and the name of the secret (in
-- the secrets file) that logs into it. Never the credential itself.
ALTER TABLE nodes ADD COLUMN bmc_url TEXT;
ALTER TABLE nodes ADD COLUMN bmc_credential TEXT;
-- The inventory file that declares the node (its path under the inventory
-- directory) and the fields it owns, comma-separated (`hostname,labels`).
ALTER TABLE nodes ADD COLUMN declared_in TEXT;
ALTER TABLE nodes ADD COLUMN declared_fields TEXT NOT NULL DEFAULT '';
