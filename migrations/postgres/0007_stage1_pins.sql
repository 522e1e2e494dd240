-- The stage-one blobs a boot loads, so image garbage collection keeps them while
-- the boot is in progress (as it keeps the boot's root filesystem).
ALTER TABLE boots ADD COLUMN stage1_kernel_digest TEXT;
ALTER TABLE boots ADD COLUMN stage1_initrd_digest TEXT;
