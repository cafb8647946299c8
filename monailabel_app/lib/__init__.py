"""Library of the StructKPN MONAI Label app (MONAI Label imports ``lib`` from the app folder)."""
