def write_html(report, out):
    return out / "report.html"
