"""The ground-truth test: simulate a recording, sort it, score the result against the truth."""
