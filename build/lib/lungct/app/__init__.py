"""The web app (`lungct app`): a Streamlit page over plain, testable helpers.

analysis    upload bytes -> result dict with an overlay PNG, logged to the prediction log (source "app")
model_info  the model page's content: card, training curves, test metrics with 95% CIs and plots
page        the Streamlit script itself (thin)
launch      the page's file, upload limit and `streamlit run` command line (`lungct app` is in lungct.cli)

Nothing is imported here, so `lungct --help` does not load torch for the app's sake.
"""
