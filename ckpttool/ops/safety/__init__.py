"""Whether a file is safe to load: the scan verdict, folders and path lists, allowlists, the --trust path."""
