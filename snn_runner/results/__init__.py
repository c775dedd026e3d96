"""Result files (HDF5): writing, reading and validating them."""
