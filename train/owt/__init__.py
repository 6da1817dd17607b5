"""owt: the library the scripts in train/ share. Each module has one job; see README.md,
"Project layout", for the map."""
