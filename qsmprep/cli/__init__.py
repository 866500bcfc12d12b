"""Command line of qsmprep: ``qsmprep bids_dir output_dir {participant,group}``."""
