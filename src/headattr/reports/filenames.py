"""The names of the files `headattr compare` writes into its output directory."""

REPORT_FILE = "report.md"
FIGURE_FILE = "consistency_analysis.png"
METRICS_FILE = "metrics.json"
LAYER_CSV_FILE = "layer_metrics.csv"
OUTPUT_FILES = (REPORT_FILE, FIGURE_FILE, METRICS_FILE, LAYER_CSV_FILE)
