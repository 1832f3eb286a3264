"""The services layer: the flows, the audit and the key checks, over the process's Runtime."""
