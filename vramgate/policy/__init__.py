"""The sans-io cores: catalogs, estimate, optimize, admission ledger and calibration. No awaits, no clock, no I/O."""
