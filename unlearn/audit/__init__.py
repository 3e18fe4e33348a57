"""`unlearn audit`: judge a third party's "unlearned" checkpoint with evidence and attacks against a control."""
