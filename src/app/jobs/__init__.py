"""What a task is: its spec in the registry, the job context it runs with, its retry backoff."""
