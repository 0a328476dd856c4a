# Harness logs (lm-eval, lmms-eval, VLMEvalKit) -> records: each `imports:` entry is a run of its own
# (model = the entry's name), analysed like a scored one; the log files are the job's sources.
import re


# The score rule leaves these records paths alone (its model constraint, SCORED_MODEL in common.smk).
rule import_logs:
    input:
        unpack(import_inputs),
    output:
        records=plan.RECORDS,
        report=plan.IMPORT_REPORT,
    log:
        "logs/imports/{model}/{dataset}/{scenario}/{prompt}.log",
    benchmark:
        "benchmarks/imports/{model}/{dataset}/{scenario}/{prompt}.tsv"
    wildcard_constraints:
        model="|".join(re.escape(n) for n in IMPORT_NAMES) if IMPORT_NAMES else "(?!)",
    conda:
        "../../envs/analysis.yaml"
    params:
        # the entry names its log files: provenance records them (with their hashes) as sources
        entry=lambda wildcards: config["imports"][wildcards.model],
        run=import_run,
    script:
        "../scripts/import_logs.py"
