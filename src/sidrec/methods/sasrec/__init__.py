"""SASRec: the ID-based baseline."""
