"""CT datasets: layouts, NIfTI reading and validation, synthetic phantoms, preprocessing, and the prepared cache."""
