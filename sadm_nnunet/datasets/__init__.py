"""Building nnU-Net raw datasets (generated test and demo cohorts)."""
