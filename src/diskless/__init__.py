"""diskless: a diskless network-boot server.

One program that hands a client its address (DHCP), its boot loader (TFTP/HTTP), a script that says
what to boot, and a copy-on-write disk served over iSCSI. Each concern lives in its own subpackage;
see ``docs/architecture.md`` for the data flow from a MAC address to a disk block.
"""

__version__ = "0.1.0"
