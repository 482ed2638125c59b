"""What researchers publish from refbench: leaderboards, bootstrap statistics and figures.

`runs` reads finished run folders, `reported` the numbers copied from papers, `leaderboard`
builds and renders the comparison tables, `bootstrap` the confidence intervals and the paired
test, `figures` the qualitative figures and training curves.
"""
