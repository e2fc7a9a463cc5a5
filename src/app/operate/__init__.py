"""Watching and steering jobs: reads, operator actions (replay, cancel, discard and their
dead-letter clean-up), stats, health and the scrape-time gauges, written once for the API,
the dashboard and the CLI."""
