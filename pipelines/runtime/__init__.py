"""Process and cluster plumbing: environment, console, the Ray session, run folders, Ray Jobs submission."""
