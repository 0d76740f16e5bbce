"""Per-machine disks on the iSCSI portal: the export plan (pure) and the service that runs it."""

from diskless.exports.plan import DiskExport, plan_exports

__all__ = ["DiskExport", "plan_exports"]
