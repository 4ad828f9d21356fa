#!/usr/bin/env bash
# formwarden: deploy a release archive to a host you reach only by FTP (docs/INSTALL.md).
#
#   LFTP_PASSWORD=… deploy/ftp/deploy.sh [options] ARCHIVE ftp://USER@HOST[:PORT][/DIR]
#   LFTP_PASSWORD=… ./deploy.sh [options] . ftp://USER@HOST[:PORT][/DIR]   (in the unpacked archive)
#   LFTP_PASSWORD=… deploy/ftp/deploy.sh [options] --rollback ftp://USER@HOST[:PORT][/DIR]
#
# ARCHIVE is the release .tar.gz (checked against its .sha256 when that is beside it) or
# the folder it unpacks to; a var/config/config.toml made in that folder is uploaded as
# with --config. DIR is the account's folder on the server that holds (or will hold) the
# web root and var/, relative to the folder the login starts in (that folder
# itself when left out). The password
# comes from LFTP_PASSWORD (never from the command line, which other users can see), or
# from ~/.netrc, or lftp asks for it.
#
# What it does, in this order, so that a visitor never runs a half-uploaded file:
#   1. looks at the server (read only) and prints the plan; --dry-run stops here;
#   2. uploads the release's own files into formwarden-releases/<release>/ (kept there for
#      --rollback; its MANIFEST, written last, marks it complete);
#   3. creates the var/ folders that are missing (with their modes) and never touches what
#      var/ holds: messages, tokens, limits and an existing var/config/config.toml stay;
#   4. uploads each executable and product file under a temporary name, sets its mode,
#      then renames it over the live one (a rename on the server is atomic);
#   5. uploads the example pages only where no file of that name exists (your own pages
#      are never overwritten), and the config given with --config only where none exists;
#   6. records the release as current (the one before as previous) and removes older ones.
# An upload cut off at any point leaves the previous release answering; run it again.
#
# Options:
#   --web-root DIR        the folder under DIR that the web server serves (public_html);
#                         "." when the account has no folder outside the web root: var/
#                         and bin/ are then guarded by their .htaccess files
#   --var-mode MODE       "private" (default): var/ only for your account (0700), for hosts
#                         that run CGI programs as your account (suEXEC; most do).
#                         "shared": var/'s working folders writable by every account
#                         (0777), for hosts that run CGI as the web server's account; the
#                         self-check URL tells you which one you have
#   --config FILE         upload FILE as var/config/config.toml if there is none yet
#   --no-examples         do not upload the example pages
#   --ca-file FILE        trust the certificate(s) in FILE for FTPS (a host's own CA)
#   --insecure-plain-ftp  allow plain FTP: password and files cross the network readable
#                         by anyone on the way. Without it the server must offer TLS
#   --rollback            put the previous release back (no ARCHIVE); again to undo it
#   --dry-run             only look and print the plan
#   -h, --help            this text
#
# Exit codes: 0 done (or planned), 1 failed (the message says where), 2 bad usage.
set -euo pipefail

die() {
  echo "deploy: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

web_root=public_html
var_mode=private
config=
ca_file=
examples=1
plain=0
rollback=0
dry_run=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --web-root) web_root=${2:?--web-root needs a folder}; shift 2 ;;
    --var-mode) var_mode=${2:?--var-mode needs private or shared}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --ca-file) ca_file=${2:?--ca-file needs a file}; shift 2 ;;
    --no-examples) examples=0; shift ;;
    --insecure-plain-ftp) plain=1; shift ;;
    --rollback) rollback=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage ;;
    --) shift; args+=("$@"); break ;;
    -*) echo "deploy: unknown option $1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ "$rollback" = 1 ]; then
  [ ${#args[@]} -eq 1 ] || usage
  archive=
  url=${args[0]}
else
  [ ${#args[@]} -eq 2 ] || usage
  archive=${args[0]}
  url=${args[1]}
fi
case "$var_mode" in private | shared) ;; *) die "--var-mode is private or shared, not $var_mode" ;; esac
command -v lftp >/dev/null || die "needs lftp (Debian/Ubuntu: apt-get install lftp; macOS: brew install lftp)"
[ -z "$ca_file" ] || [ -r "$ca_file" ] || die "cannot read --ca-file $ca_file"
[ -z "$config" ] || [ -r "$config" ] || die "cannot read --config $config"

# Everything that goes into an lftp command is quoted; these characters could break out.
safe() {
  case "$1" in
    *'"'* | *'\'* | *$'\n'* | *';'* | *'&'* | *'|'*) die "unsupported character in $2: $1" ;;
  esac
}
q() { printf '"%s"' "$1"; }

# ftp://USER@HOST[:PORT][/DIR]; the user may itself contain "@" (logins like
# name@example.org), so the host starts after the last "@".
if [[ "$url" =~ ^(ftp|ftps)://(.+)@([^@/:]+)(:([0-9]+))?(/(.*))?$ ]]; then
  scheme=${BASH_REMATCH[1]}
  user=${BASH_REMATCH[2]}
  host=${BASH_REMATCH[3]}
  port=${BASH_REMATCH[5]:-}
  dir=${BASH_REMATCH[7]:-}
else
  die "the address must look like ftp://USER@HOST[:PORT]/DIR (got: $url)"
fi
[ -n "$dir" ] || dir=.
web_root=${web_root%/}
[ -n "$web_root" ] || web_root=.
for v in "$user:user" "$host:host" "$dir:folder" "$web_root:--web-root"; do
  safe "${v%:*}" "${v##*:}"
done
case "/$web_root/" in */../*) die "--web-root must stay inside the account folder" ;; esac
if [ "$web_root" = . ]; then web=; else web="$web_root/"; fi

lftp_settings() {
  echo "set cmd:fail-exit yes"
  echo "set cmd:interactive no"
  echo "set net:max-retries 3"
  echo "set net:timeout 30"
  echo "set net:reconnect-interval-base 2"
  echo "set xfer:clobber on"
  echo "set ftp:passive-mode on"
  if [ "$plain" = 1 ] && [ "$scheme" = ftp ]; then
    echo "set ftp:ssl-allow no"
  else
    # Explicit TLS (AUTH TLS) for ftp://, implicit for ftps://; control and data both
    # encrypted, certificate and host name checked.
    echo "set ftp:ssl-force yes"
    echo "set ftp:ssl-protect-data yes"
    echo "set ftp:ssl-protect-list yes"
    echo "set ssl:verify-certificate yes"
    [ -z "$ca_file" ] || echo "set ssl:ca-file $(q "$ca_file")"
  fi
  local open
  open="open --user $(q "$user")"
  [ -z "${LFTP_PASSWORD:-}" ] || open+=" --env-password"
  [ -z "$port" ] || open+=" -p $port"
  echo "$open $(q "$scheme://$host")"
  echo "cd $(q "$dir")"
}

# Runs an lftp script (settings and login first) from stdin.
run_lftp() {
  local script
  script=$(mktemp)
  {
    lftp_settings
    cat
    echo "bye"
  } >"$script"
  local rc=0
  lftp -f "$script" || rc=$?
  rm -f "$script"
  return "$rc"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------------------
# The files of a release, relative to the archive's top folder
# ---------------------------------------------------------------------------------------
# Product files are replaced on every deploy (and kept per release for --rollback);
# examples only ever go where nothing of that name exists; var/ folders are only created.
var_dirs=(var var/config var/lock var/tmp var/tmp/captcha var/tmp/ratelimit var/state
  var/state/tokens var/spool var/spool/new var/spool/failed var/spool/sent var/spool/quarantine)

# The name of a file in a release copy: dot-files get a visible name, because many FTP
# servers hide dot-files from listings, and a folder with a hidden file in it could then
# neither be listed completely nor removed.
copy_name() { printf '%s\n' "$1" | sed -e 's#/\.#/dot.#g' -e 's#^\.#dot.#'; }

# The remote path of an archive path (public_html/ is the web root).
remote_of() {
  case "$1" in
    public_html/*) echo "$web${1#public_html/}" ;;
    *) echo "$1" ;;
  esac
}
mode_of() {
  case "$1" in
    */.htaccess) echo 644 ;;
    *.cgi | bin/*) echo 755 ;;
    *) echo 644 ;;
  esac
}

# Lists (into product.list and examples.list) the files of the unpacked release in $1.
classify() {
  local top=$1
  local_config=
  (cd "$top" && find public_html bin var -type f | LC_ALL=C sort) >"$work/all.list"
  : >"$work/product.list"
  : >"$work/examples.list"
  while IFS= read -r f; do
    case "$f" in
      # The operator's own config, made in the unpacked folder: uploaded like --config.
      var/config/config.toml) local_config="$top/$f" ;;
      public_html/*.html | public_html/*.css) echo "$f" >>"$work/examples.list" ;;
      MANIFEST) ;;
      *) echo "$f" >>"$work/product.list" ;;
    esac
  done <"$work/all.list"
  [ -s "$work/product.list" ] || die "no release files in $top"
  grep -q '^public_html/cgi-bin/contact\.cgi$' "$work/product.list" ||
    die "$top is not a formwarden release (no public_html/cgi-bin/contact.cgi)"
}

# ---------------------------------------------------------------------------------------
# 1. Look at the server (read only)
# ---------------------------------------------------------------------------------------
probe_paths=("${web}cgi-bin" "${var_dirs[@]}" var/config/config.toml formwarden-releases
  formwarden-releases/CURRENT formwarden-releases/PREVIOUS)
[ -z "$web" ] || probe_paths+=("${web%/}")
probe() {
  {
    echo "set cmd:fail-exit no"
    echo "echo @@exists"
    for p in "${probe_paths[@]}"; do echo "cls -1d $(q "$p")"; done
    for p in "${@}"; do echo "cls -1d $(q "$p")"; done
    echo "echo @@releases"
    echo "cls -1 formwarden-releases/"
    echo "echo @@current"
    echo "cat formwarden-releases/CURRENT"
    echo "echo"
    echo "echo @@previous"
    echo "cat formwarden-releases/PREVIOUS"
    echo "echo"
    echo "echo @@end"
  } | run_lftp >"$work/probe.out" 2>"$work/probe.err" || {
    cat "$work/probe.err" >&2
    if grep -q 'ssl-force is set' "$work/probe.err"; then
      die "the server does not offer TLS (FTPS). Ask your host for FTPS, or accept that the password and files cross the network unencrypted with --insecure-plain-ftp"
    fi
    die "could not log in to $host or open folder $dir (see above)"
  }
  grep -q '^@@end$' "$work/probe.out" || {
    cat "$work/probe.err" >&2
    die "lost the connection while looking at the server"
  }
  sed -n '/^@@exists$/,/^@@releases$/p' "$work/probe.out" | sed '1d;$d' | sed 's#/$##' >"$work/exists"
  sed -n '/^@@releases$/,/^@@current$/p' "$work/probe.out" | sed '1d;$d' |
    sed -e 's#/$##' -e 's#^formwarden-releases/##' >"$work/releases"
  current=$(sed -n '/^@@current$/,/^@@previous$/p' "$work/probe.out" | sed '1d;$d' | head -n 1)
  previous=$(sed -n '/^@@previous$/,/^@@end$/p' "$work/probe.out" | sed '1d;$d' | head -n 1)
}
exists() { grep -qxF "$1" "$work/exists"; }

# ---------------------------------------------------------------------------------------
# The release to install: unpacked from ARCHIVE, or downloaded for --rollback
# ---------------------------------------------------------------------------------------
if [ "$rollback" = 0 ]; then
  if [ -d "$archive" ]; then
    # An unpacked release folder (the deploy.sh inside it, run as ./deploy.sh .).
    top=$(cd "$archive" && pwd)
  elif [ ! -r "$archive" ]; then
    die "cannot read $archive"
  elif [ -r "$archive.sha256" ]; then
    (cd "$(dirname "$archive")" && sha256sum -c --quiet "$(basename "$archive").sha256") >/dev/null ||
      die "$archive does not match $archive.sha256: download it again"
  else
    echo "deploy: no $archive.sha256 beside the archive; its integrity is not checked" >&2
  fi
  if [ ! -d "$archive" ]; then
    mkdir -p "$work/unpacked"
    tar -xzf "$archive" -C "$work/unpacked" || die "cannot unpack $archive"
    top=$(find "$work/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    [ -n "$top" ] || die "$archive is empty"
  fi
  classify "$top"
  if [ -n "$local_config" ] && [ -z "$config" ]; then
    config=$local_config
    echo "deploy: var/config/config.toml of $top is your config (uploaded only where none exists)"
  fi
  release="$(basename "$top")-$(date -u +%Y%m%dT%H%M%SZ)"
  (cd "$top" && xargs -d '\n' sha256sum <"$work/product.list") >"$work/MANIFEST"
fi

example_paths=()
if [ "$rollback" = 0 ] && [ "$examples" = 1 ]; then
  while IFS= read -r f; do
    example_paths+=("$(remote_of "$f")")
    [ "$(dirname "$(remote_of "$f")")" = . ] || example_paths+=("$(dirname "$(remote_of "$f")")")
  done <"$work/examples.list"
fi
probe "${example_paths[@]}"

if [ "$rollback" = 1 ]; then
  [ -n "$previous" ] || die "no previous release recorded in formwarden-releases/PREVIOUS: nothing to roll back to"
  grep -qxF "$previous" "$work/releases" || die "the previous release $previous is no longer on the server"
  safe "$previous" "PREVIOUS"
  top="$work/rollback/$previous"
  mkdir -p "$top"
  # File by file, as its MANIFEST names them.
  echo "get $(q "formwarden-releases/$previous/MANIFEST") -o $(q "$top/MANIFEST")" | run_lftp ||
    die "could not download formwarden-releases/$previous/MANIFEST"
  while read -r _ f; do
    safe "$f" "MANIFEST entry"
    case "$f" in /* | *..*) die "formwarden-releases/$previous/MANIFEST names $f" ;; esac
    mkdir -p "$(dirname "$top/$f")"
    echo "get $(q "formwarden-releases/$previous/$(copy_name "$f")") -o $(q "$top/$f")"
  done <"$top/MANIFEST" | run_lftp || die "could not download formwarden-releases/$previous"
  [ -s "$top/MANIFEST" ] || die "formwarden-releases/$previous has no MANIFEST: it was never uploaded completely"
  (cd "$top" && sha256sum -c --quiet MANIFEST) || die "formwarden-releases/$previous does not match its MANIFEST"
  classify "$top"
  release=$previous
fi
safe "$release" "release name"

# ---------------------------------------------------------------------------------------
# 2.–6. The plan, as one lftp script
# ---------------------------------------------------------------------------------------
plan="$work/plan.lftp"
: >"$plan"
say() { echo "  $*"; }
echo "deploy: $scheme://$host${port:+:$port} folder $dir, web root $web_root, var/ $var_mode"
[ "$plain" = 0 ] || [ "$scheme" = ftps ] || echo "deploy: WARNING: plain FTP, nothing is encrypted" >&2
[ -z "$current" ] || echo "deploy: live release now: $current"

if [ "$rollback" = 0 ]; then
  echo "deploy: uploading $release"
  say "keep a copy in formwarden-releases/$release/ (for --rollback)"
  # Guards the copies where the account has no folder outside the web root.
  printf '# formwarden: copies of releases for --rollback; never served.\nRequire all denied\n' >"$work/deny.htaccess"
  {
    exists formwarden-releases || echo "mkdir formwarden-releases"
    echo "put $(q "$work/deny.htaccess") -o formwarden-releases/htaccess.upload"
    echo "mv formwarden-releases/htaccess.upload formwarden-releases/.htaccess"
    while IFS= read -r f; do
      echo "mkdir -p -f $(q "$(dirname "formwarden-releases/$release/$f")")"
      echo "put $(q "$top/$f") -o $(q "formwarden-releases/$release/$(copy_name "$f")")"
    done <"$work/product.list"
    echo "put $(q "$work/MANIFEST") -o $(q "formwarden-releases/$release/MANIFEST")"
  } >>"$plan"
else
  echo "deploy: rolling back to $release"
fi

# var/: create what is missing, with its mode; never anything that is already there.
for d in "${var_dirs[@]}"; do
  if ! exists "$d"; then
    if [ "$var_mode" = shared ] && [ "$d" != var ] && [ "$d" != var/config ]; then m=777
    elif [ "$var_mode" = shared ]; then m=755
    else m=700; fi
    say "create $d/ (mode $m)"
    echo "mkdir $(q "$d")" >>"$plan"
    echo "chmod $m $(q "$d")" >>"$plan"
  fi
done
if [ -n "$config" ]; then
  if exists var/config/config.toml; then
    echo "deploy: var/config/config.toml exists on the server; leaving it as it is (not uploading $config)" >&2
  else
    if [ "$var_mode" = shared ]; then m=644; else m=600; fi
    say "upload $config as var/config/config.toml (mode $m)"
    {
      echo "put $(q "$config") -o var/config/config.toml.upload"
      echo "chmod $m var/config/config.toml.upload"
      echo "mv var/config/config.toml.upload var/config/config.toml"
    } >>"$plan"
  fi
fi

# Product files: folders first, then everything but the executables, then the executables
# (so that a new executable never meets an old .htaccess), each under a temporary name
# without the .cgi suffix (the .htaccess runs and serves nothing else) and renamed over
# the live file once it is complete and has its mode.
[ -z "$web" ] || exists "${web%/}" || {
  say "create ${web%/}/"
  echo "mkdir $(q "${web%/}")" >>"$plan"
}
exists "${web}cgi-bin" || {
  say "create ${web}cgi-bin/ (mode 755)"
  echo "mkdir $(q "${web}cgi-bin")" >>"$plan"
  echo "chmod 755 $(q "${web}cgi-bin")" >>"$plan"
}
exists bin || echo "mkdir -f bin" >>"$plan"
install_file() {
  local f=$1 dst tmp
  dst=$(remote_of "$f")
  tmp="$(dirname "$dst")/fw-upload-$(basename "$dst" | tr -d .).tmp"
  say "install $dst (mode $(mode_of "$f"))"
  {
    echo "put $(q "$top/$f") -o $(q "$tmp")"
    echo "chmod $(mode_of "$f") $(q "$tmp")"
    echo "mv $(q "$tmp") $(q "$dst")"
  } >>"$plan"
}
# (bin/.htaccess is no executable: it goes first, so that bin/'s programs are guarded from
# the moment they appear where bin/ is inside the web root.)
grep -v -e '\.cgi$' -e '^bin/[^.]' "$work/product.list" >"$work/first.list" || true
grep -e '\.cgi$' -e '^bin/[^.]' "$work/product.list" >"$work/last.list" || true
while IFS= read -r f; do install_file "$f"; done <"$work/first.list"
while IFS= read -r f; do install_file "$f"; done <"$work/last.list"
if [ "$rollback" = 0 ] && [ "$examples" = 1 ]; then
  while IFS= read -r f; do
    dst=$(remote_of "$f")
    if exists "$dst"; then
      say "keep $dst (exists)"
      continue
    fi
    dd=$(dirname "$dst")
    [ "$dd" = . ] || exists "$dd" || echo "mkdir -p -f $(q "$dd")" >>"$plan"
    say "upload example $dst"
    echo "put $(q "$top/$f") -o $(q "$dst")" >>"$plan"
  done <"$work/examples.list"
fi

# Record the release; keep it and the one before, remove older copies.
# (After a rollback the release rolled back from becomes the previous one, so a second
# --rollback undoes the first.)
new_previous=$current
printf '%s\n' "$release" >"$work/CURRENT"
printf '%s\n' "$new_previous" >"$work/PREVIOUS"
{
  echo "put $(q "$work/PREVIOUS") -o formwarden-releases/PREVIOUS.upload"
  echo "mv formwarden-releases/PREVIOUS.upload formwarden-releases/PREVIOUS"
  echo "put $(q "$work/CURRENT") -o formwarden-releases/CURRENT.upload"
  echo "mv formwarden-releases/CURRENT.upload formwarden-releases/CURRENT"
} >>"$plan"
while IFS= read -r r; do
  [ -n "$r" ] || continue
  case "$r" in "$release" | "$new_previous" | CURRENT | PREVIOUS | *.upload) continue ;; esac
  safe "$r" "old release"
  say "remove old copy formwarden-releases/$r/"
  echo "rm -r -f $(q "formwarden-releases/$r")" >>"$plan"
done <"$work/releases"

if [ "$dry_run" = 1 ]; then
  echo "deploy: dry run, nothing changed"
  exit 0
fi
start=$(date +%s)
run_lftp <"$plan" || die "the upload stopped part-way; the site still runs the previous release for every file not yet renamed into place. Run the same command again"
echo "deploy: $release is live ($(($(date +%s) - start)) s)"
if [ "$rollback" = 0 ] && ! exists var/config/config.toml && [ -z "$config" ]; then
  echo "deploy: next: upload your var/config/config.toml (docs/INSTALL.md, step 3)"
fi
