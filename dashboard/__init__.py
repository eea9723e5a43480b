"""The lvs-audit Streamlit dashboard: run ``streamlit run dashboard/app.py`` from the repository root."""
