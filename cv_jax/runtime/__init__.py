"""The process: joining a multi-process job and the CPU defaults the commands apply."""
