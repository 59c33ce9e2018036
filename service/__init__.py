"""fac-backup: backups and restores of the FAC database and media bucket."""

__version__ = "0.1.0"
