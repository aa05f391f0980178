"""The collapse comparison: CATDM, CSDM and CATDM w/o CM on digits.

Same budget and seeds, digits-FID beside the embedding-variance summary (paper 003 Figure 1: CSDM's
embeddings are meant to collapse, CATDM's not). A preset of ablation, same options:

    python -m benchmarks.ablation_digits --seeds 0 1 --jobs 2 --threads 1
"""
from benchmarks import ablation


def main(argv=None) -> None:
    ablation.main(argv, default_arms=("CSDM", "CATDM w/o CM", "CATDM"), description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
