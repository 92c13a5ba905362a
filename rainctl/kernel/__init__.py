"""The kernel side of a node (VIP addresses, ARP), behind small Protocols."""
