"""Small utilities shared by interfaces and workflows (image I/O, geometry)."""
