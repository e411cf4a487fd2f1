"""The reference workload: a bank support inbox triaged with people in the loop."""
