#!/usr/bin/env bash
# Deploy Viva Relay into one resource group (one Microsoft 365 region), in the three steps that
# the Event Grid webhook forces:
#   1. infra/main.json       everything except the Event Grid subscription
#   2. func azure functionapp publish <app> --python
#                            the code; the host then creates its blobs_extension system key
#   3. infra/eventgrid.json  the subscription: landing account BlobCreated (Metadata.json) -> ingest_drop
#
# Usage: infra/deploy.sh <resource-group> <parameters-file>
#
# Environment:
#   DRY_RUN=1            print the commands in order and run none of them
#   MGDC_APP_SECRET      client secret of the MGDC app; needed on the first deployment (it is stored in
#                        the Key Vault). Passed to step 1 in a private temporary file, never on the
#                        command line. Leave unset later to keep the stored secret.
#   LOCATION             create the resource group in this region first (az group create)
#   DEPLOYMENT_PREFIX    prefix of the deployment names (default viva-relay)
#   PUBLISH_ATTEMPTS     tries of step 2; new role assignments take minutes to apply (default 3)
#   KEY_WAIT_SECONDS     how long to wait for the blobs_extension key before step 3 (default 600)
set -euo pipefail

usage() {
    echo "usage: $0 <resource-group> <parameters-file>" >&2
    echo "       DRY_RUN=1 $0 <resource-group> <parameters-file>   # print the commands only" >&2
}

if [[ $# -ne 2 ]]; then
    usage
    exit 2
fi

RESOURCE_GROUP=$1
PARAMETERS_FILE=$2
DRY_RUN=${DRY_RUN:-0}
DEPLOYMENT_PREFIX=${DEPLOYMENT_PREFIX:-viva-relay}
PUBLISH_ATTEMPTS=${PUBLISH_ATTEMPTS:-3}
KEY_WAIT_SECONDS=${KEY_WAIT_SECONDS:-600}
MAIN_DEPLOYMENT="${DEPLOYMENT_PREFIX}-main"
EVENTGRID_DEPLOYMENT="${DEPLOYMENT_PREFIX}-eventgrid"

INFRA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$INFRA_DIR/.." && pwd)

if [[ ! -f $PARAMETERS_FILE ]]; then
    echo "parameters file not found: $PARAMETERS_FILE" >&2
    exit 2
fi
PARAMETERS_FILE="$(cd "$(dirname "$PARAMETERS_FILE")" && pwd)/$(basename "$PARAMETERS_FILE")"

dry() { [[ $DRY_RUN == 1 ]]; }

# Print a command (quoted where needed, so it can be pasted), then run it unless DRY_RUN=1.
run() {
    local arg quoted=""
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            quoted+=" $arg"
        else
            quoted+=" $(printf '%q' "$arg")"
        fi
    done
    echo "+${quoted}"
    if ! dry; then
        "$@"
    fi
}

# Value of an output of the step-1 deployment (a placeholder in a dry run).
main_output() {
    if dry; then
        echo "OUTPUT_$1"
    else
        az deployment group show --resource-group "$RESOURCE_GROUP" --name "$MAIN_DEPLOYMENT" \
            --query "properties.outputs.$1.value" --output tsv
    fi
}

if ! dry; then
    for tool in az func; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "$tool is not installed (see docs/deploy.md, Prerequisites)" >&2
            exit 1
        fi
    done
fi

if [[ -n ${LOCATION:-} ]]; then
    run az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none
fi

# ---- Step 1: main template ----------------------------------------------------------------
echo "== Step 1/3: main template (infra/main.json) into $RESOURCE_GROUP"
secret_args=()
if [[ -n ${MGDC_APP_SECRET:-} ]]; then
    if dry; then
        secret_args=(--parameters "@SECRET_PARAMETERS_FILE")
    else
        secret_file=$(mktemp)
        trap 'rm -f "$secret_file"' EXIT
        chmod 600 "$secret_file"
        escaped=${MGDC_APP_SECRET//\\/\\\\}
        escaped=${escaped//\"/\\\"}
        printf '{"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#", "contentVersion": "1.0.0.0", "parameters": {"mgdcAppSecret": {"value": "%s"}}}\n' \
            "$escaped" >"$secret_file"
        secret_args=(--parameters "@$secret_file")
    fi
fi
run az deployment group create \
    --resource-group "$RESOURCE_GROUP" \
    --name "$MAIN_DEPLOYMENT" \
    --template-file "$INFRA_DIR/main.json" \
    --parameters "@$PARAMETERS_FILE" \
    ${secret_args[@]+"${secret_args[@]}"} \
    --output none

FUNCTION_APP=$(main_output functionAppName)
SYSTEM_TOPIC=$(main_output systemTopicName)
LANDING_CONTAINER=$(main_output landingContainer)

# ---- Step 2: publish the code ---------------------------------------------------------------
echo "== Step 2/3: publish the code to $FUNCTION_APP"
attempt=1
while true; do
    echo "+ cd $(printf '%q' "$REPO_ROOT")"
    if (cd "$REPO_ROOT" && run func azure functionapp publish "$FUNCTION_APP" --python) || dry; then
        break
    fi
    if ((attempt >= PUBLISH_ATTEMPTS)); then
        echo "publishing failed $attempt times; rerun this script (every step is idempotent)" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    echo "publish failed (new role assignments can take a few minutes to apply); retrying in 60 s" >&2
    sleep 60
done

# ---- Step 3: Event Grid subscription ------------------------------------------------------------
echo "== Step 3/3: Event Grid subscription (infra/eventgrid.json)"
echo "+ wait for the blobs_extension system key of $FUNCTION_APP"
if ! dry; then
    waited=0
    until [[ -n $(az functionapp keys list --resource-group "$RESOURCE_GROUP" --name "$FUNCTION_APP" \
        --query "systemKeys.blobs_extension" --output tsv 2>/dev/null || true) ]]; do
        if ((waited >= KEY_WAIT_SECONDS)); then
            echo "the host has no blobs_extension key after ${KEY_WAIT_SECONDS}s: check that ingest_drop" \
                "was published (func azure functionapp list-functions $FUNCTION_APP), then rerun" >&2
            exit 1
        fi
        sleep 15
        waited=$((waited + 15))
    done
fi
run az deployment group create \
    --resource-group "$RESOURCE_GROUP" \
    --name "$EVENTGRID_DEPLOYMENT" \
    --template-file "$INFRA_DIR/eventgrid.json" \
    --parameters "functionAppName=$FUNCTION_APP" "systemTopicName=$SYSTEM_TOPIC" \
    "landingContainer=$LANDING_CONTAINER" \
    --output none

# ---- What goes into Microsoft's forms ---------------------------------------------------------
echo "== Done. For the MGDC app registration and the Viva Insights partner forms (docs/deploy.md):"
for name in mgdcAppId keyVaultUri landingStorageAccountName landingDfsEndpoint landingContainer region consentLink; do
    printf '  %-26s %s\n' "$name" "$(main_output "$name")"
done
