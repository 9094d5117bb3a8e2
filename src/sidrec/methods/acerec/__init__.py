"""ACERec: long OPQ IDs, token merger, holistic scoring."""
