#!/bin/sh
# Vérifier un reçu de livraison du hub SPIE avec openssl seul (sans le hub, sans Python, sans jq).
#
#   sh verifier-recu.sh [--tete-gardee ANCIEN.json] [--coherence PREUVE.json] MANIFESTE.manifest.json CLE.pem
#
# Outils : un sh POSIX, awk (POSIX : mawk, gawk, busybox), openssl 3 (Ed25519 avec « pkeyutl -rawin »), mkdir, rm.
# CLE.pem : la clé publique de signature du journal que le hub a PUBLIÉE (docs/cles-publiques/audit-<kid>.pem),
# jamais une clé jointe à un export ou lue dans la base du hub.
#
# Vérifie, dans cet ordre (arrêt au premier écart, code 1 et la raison en français) :
#  1. le fichier livré (à côté du manifeste) : son SHA-256 est celui du manifeste ;
#  2. la signature Ed25519 du manifeste, sur son JSON canonique (clés triées, sans espaces, UTF-8, sans le champ
#     « signature ») : le manifeste est relu par un petit analyseur JSON en awk et réécrit sous cette forme ;
#  3. la tête du journal (journal.tete) : signature Ed25519 sur « enonce », octets exacts que le hub a signés,
#     et taille/racine de l'énoncé égales à celles de la tête ;
#  4. l'entrée du journal (journal.entree) : son empreinte de chaîne = SHA-256(prev_hash + tableau JSON de ses
#     colonnes) ; elle décrit bien ce fichier (événement « livraison », même destinataire, même nom, même SHA-256) ;
#  5. l'inclusion de l'entrée dans la tête : feuille SHA-256(0x00 || 32 octets de l'empreinte), chemin RFC 9162
#     §2.1.3.2 jusqu'à la racine signée ;
#  6. la preuve de cohérence du reçu (journal.coherence, depuis la tête du reçu précédent) : RFC 9162 §2.1.4.2 ;
#  7. avec --tete-gardee (un reçu précédent gardé, ou une tête) : sa signature, puis que le journal la prolonge
#     (même taille : même racine ; plus petite : la tête « depuis » du reçu, ou celle de --coherence, doit être
#     exactement celle gardée et la preuve de cohérence doit tenir). Sinon le journal a été réécrit, tronqué ou
#     réordonné avant elle, même re-signé avec la clé du hub.
# Code 0 et « reçu valide » si tout tient ; 1 : reçu invalide ; 2 : usage ou fichier illisible.
set -u
LC_ALL=C
export LC_ALL

usage() {
	printf '%s\n' "usage : $0 [--tete-gardee ANCIEN.json] [--coherence PREUVE.json] MANIFESTE.manifest.json CLE.pem" >&2
	exit 2
}

kept=""
proof=""
while [ $# -gt 0 ]; do
	case $1 in
	--tete-gardee) [ $# -ge 2 ] || usage; kept=$2; shift 2 ;;
	--coherence) [ $# -ge 2 ] || usage; proof=$2; shift 2 ;;
	--) shift; break ;;
	-*) usage ;;
	*) break ;;
	esac
done
[ $# -eq 2 ] || usage
manifest=$1
key=$2
for f in "$manifest" "$key" ${kept:+"$kept"} ${proof:+"$proof"}; do
	[ -f "$f" ] && [ -r "$f" ] || { printf 'fichier illisible : %s\n' "$f" >&2; exit 2; }
done

work="${TMPDIR:-/tmp}/verifier-recu.$$"
(umask 077 && mkdir "$work") || { printf 'dossier temporaire impossible : %s\n' "$work" >&2; exit 2; }
trap 'rm -rf "$work"' EXIT
trap 'exit 2' HUP INT TERM

invalid() {
	printf 'reçu invalide : %s\n' "$*" >&2
	exit 1
}

# -- JSON in awk -----------------------------------------------------------------------------------------------
# mode=flat  : one line per scalar, « chemin valeur-brute » (chemin a.b.0 ; « chemin.# n » pour la longueur d'un
#              tableau) ; valeur brute = le jeton JSON tel qu'écrit (chaîne avec ses guillemets et échappements).
# mode=canon : le document en JSON canonique (clés triées, séparateurs « , » et « : »), sans la clé de premier
#              niveau « sans ». Les chaînes et nombres sont recopiés tels quels : le hub écrit le manifeste et le
#              signe avec le même json.dumps (ensure_ascii=False), donc mêmes échappements.
# mode=str   : l'entrée est un jeton chaîne JSON ; écrit ses octets décodés.
JSON_AWK='
function fail(m) { printf "JSON illisible : %s\n", m > "/dev/stderr"; bad = 1; exit 2 }
function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1))) pos++ }
function str(   start, c) {
	start = pos; pos++
	while (pos <= n) {
		c = substr(s, pos, 1)
		if (c == "\\") pos += 2
		else if (c == "\"") { pos++; return substr(s, start, pos - start) }
		else pos++
	}
	fail("chaîne non terminée")
}
function emit(path, tok) { if (mode == "flat") print path " " tok }
function value(path, depth,   c, tok, out, cnt, i, j, key, k, v, tk, tv) {
	# A receipt is small and shallow: bounds keep a hostile file from making this parser slow (it sorts keys).
	if (depth > 16) fail("imbrication trop profonde")
	ws(); c = substr(s, pos, 1)
	if (c == "{") {
		pos++; cnt = 0; ws()
		if (substr(s, pos, 1) == "}") { pos++; return "{}" }
		while (1) {
			ws(); if (substr(s, pos, 1) != "\"") fail("clé attendue")
			key = str(); ws()
			if (substr(s, pos, 1) != ":") fail("« : » attendu")
			pos++
			k = substr(key, 2, length(key) - 2)
			v = value(path == "" ? k : path "." k, depth + 1)
			if (!(depth == 0 && k == sans)) { cnt++; K[depth, cnt] = k; V[depth, cnt] = key ":" v }
			if (cnt > 128) fail("objet trop grand")
			ws(); c = substr(s, pos, 1); pos++
			if (c == "}") break
			if (c != ",") fail("« , » ou « } » attendu")
		}
		for (i = 2; i <= cnt; i++) {
			tk = K[depth, i]; tv = V[depth, i]
			for (j = i - 1; j >= 1 && K[depth, j] > tk; j--) { K[depth, j + 1] = K[depth, j]; V[depth, j + 1] = V[depth, j] }
			K[depth, j + 1] = tk; V[depth, j + 1] = tv
		}
		out = "{"
		for (i = 1; i <= cnt; i++) out = out (i > 1 ? "," : "") V[depth, i]
		return out "}"
	}
	if (c == "[") {
		pos++; cnt = 0; out = "["; ws()
		if (substr(s, pos, 1) == "]") { pos++; emit(path ".#", 0); return "[]" }
		while (1) {
			v = value(path "." cnt, depth + 1)
			out = out (cnt > 0 ? "," : "") v; cnt++
			if (cnt > 4096) fail("tableau trop grand")
			ws(); c = substr(s, pos, 1); pos++
			if (c == "]") break
			if (c != ",") fail("« , » ou « ] » attendu")
		}
		emit(path ".#", cnt)
		return out "]"
	}
	if (c == "\"") { tok = str(); emit(path, tok); return tok }
	if (match(substr(s, pos), /^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false|null)/)) {
		tok = substr(s, pos, RLENGTH); pos += RLENGTH; emit(path, tok); return tok
	}
	fail("valeur attendue")
}
function hexval(c) { return index("0123456789abcdef", tolower(c)) - 1 }
function utf8(cp) {
	if (cp < 128) return sprintf("%c", cp)
	if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
	if (cp < 65536) return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
	return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64, 128 + int(cp / 64) % 64, 128 + cp % 64)
}
function unescape(t,   out, i, c, e, cp, lo) {
	out = ""; i = 2
	while (i < length(t)) {
		c = substr(t, i, 1)
		if (c != "\\") { out = out c; i++; continue }
		e = substr(t, i + 1, 1); i += 2
		if (e == "n") out = out "\n"; else if (e == "t") out = out "\t"; else if (e == "r") out = out "\r"
		else if (e == "b") out = out "\b"; else if (e == "f") out = out "\f"
		else if (e == "u") {
			cp = hexval(substr(t, i, 1)) * 4096 + hexval(substr(t, i + 1, 1)) * 256 + hexval(substr(t, i + 2, 1)) * 16 + hexval(substr(t, i + 3, 1))
			i += 4
			if (cp >= 55296 && cp < 56320 && substr(t, i, 2) == "\\u") {
				lo = hexval(substr(t, i + 2, 1)) * 4096 + hexval(substr(t, i + 3, 1)) * 256 + hexval(substr(t, i + 4, 1)) * 16 + hexval(substr(t, i + 5, 1))
				cp = 65536 + (cp - 55296) * 1024 + (lo - 56320); i += 6
			}
			if (cp == 0) fail("caractère nul")
			out = out utf8(cp)
		} else out = out e
	}
	return out
}
{ s = s $0 "\n"; if (length(s) > 1048576) { printf "JSON illisible : fichier trop grand pour un reçu\n" > "/dev/stderr"; bad = 1; exit 2 } }
END {
	if (bad) exit 2
	n = length(s); pos = 1
	if (mode == "str") { ws(); if (substr(s, pos, 1) != "\"") fail("chaîne attendue"); printf "%s", unescape(str()); exit 0 }
	out = value("", 0); ws()
	if (pos <= n) fail("texte après le document")
	if (mode == "canon") printf "%s", out
}'

flat() {
	awk -v mode=flat -v sans= "$JSON_AWK" "$1" > "$2" || { printf 'JSON illisible : %s\n' "$1" >&2; exit 2; }
}
# get FLAT PATH: the raw JSON token at PATH (empty when absent).
get() { awk -v k="$2" 'index($0, k " ") == 1 { print substr($0, length(k) + 2); exit }' "$1"; }
# text TOKEN: a JSON string token decoded, to stdout (bytes as they are, no newline added).
text() { printf '%s\n' "$1" | awk -v mode=str "$JSON_AWK"; }
is_hex64() { [ ${#1} -eq 64 ] && case $1 in *[!0-9a-f]*) return 1 ;; *) return 0 ;; esac; }
is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }
# hex2bin HEX: the bytes (through printf octal escapes: no xxd needed).
hex2bin() { printf "$(printf '%s\n' "$1" | awk '{ for (i = 1; i < length($0); i += 2) printf "\\%03o", (index("0123456789abcdef", substr($0, i, 1)) - 1) * 16 + index("0123456789abcdef", substr($0, i + 1, 1)) - 1 }')"; }
sha256() { openssl dgst -sha256 -r | awk '{ print $1 }'; }
node() { { printf '\001'; hex2bin "$1"; hex2bin "$2"; } | sha256; }
leaf() { { printf '\000'; hex2bin "$1"; } | sha256; }

# verify_head FLAT PREFIX WHAT: Ed25519 signature of the head at PREFIX over its « enonce », and the statement's
# size and root equal to the head's; sets head_size and head_root.
verify_head() {
	pre=${2:+$2.}
	e=$(get "$1" "${pre}enonce"); sig=$(get "$1" "${pre}signature"); head_size=$(get "$1" "${pre}taille")
	head_root=$(text "$(get "$1" "${pre}racine")")
	[ -n "$e" ] && [ -n "$sig" ] && is_uint "$head_size" && is_hex64 "$head_root" || invalid "$3 : tête du journal incomplète"
	text "$e" > "$work/enonce"
	text "$sig" | openssl base64 -d -A > "$work/sig" 2>/dev/null
	openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$work/enonce" -sigfile "$work/sig" > /dev/null 2>&1 ||
		invalid "$3 : signature de la tête du journal invalide (falsifiée, ou pas signée par la clé publiée)"
	flat "$work/enonce" "$work/enonce.flat"
	[ "$(get "$work/enonce.flat" type)" = '"spie-hub/tete-de-journal/v1"' ] &&
		[ "$(get "$work/enonce.flat" taille)" = "$head_size" ] &&
		[ "$(get "$work/enonce.flat" racine)" = "\"$head_root\"" ] ||
		invalid "$3 : la taille ou la racine de la tête ne sont pas celles de son énoncé signé"
}

# consistent M N ROOT_M ROOT_N FLAT PATHPREFIX: RFC 9162 §2.1.4.2 (consistency of the tree of M leaves with N).
consistent() {
	m=$1 n=$2 first=$3 second=$4 count=$(get "$5" "$6.#")
	is_uint "$count" || return 1
	[ "$m" -eq 0 ] && return 0
	[ "$m" -gt "$n" ] && return 1
	[ "$m" -eq "$n" ] && { [ "$count" -eq 0 ] && [ "$first" = "$second" ]; return; }
	[ "$count" -gt 0 ] || return 1
	i=0
	if [ $((m & (m - 1))) -eq 0 ]; then
		c0=$first
	else
		c0=$(text "$(get "$5" "$6.0")"); i=1
	fi
	is_hex64 "$c0" || return 1
	fn=$((m - 1)) sn=$((n - 1))
	while [ $((fn & 1)) -eq 1 ]; do fn=$((fn >> 1)) sn=$((sn >> 1)); done
	fr=$c0 sr=$c0
	while [ "$i" -lt "$count" ]; do
		c=$(text "$(get "$5" "$6.$i")"); i=$((i + 1))
		is_hex64 "$c" || return 1
		[ "$sn" -eq 0 ] && return 1
		if [ $((fn & 1)) -eq 1 ] || [ "$fn" -eq "$sn" ]; then
			fr=$(node "$c" "$fr") sr=$(node "$c" "$sr")
			if [ $((fn & 1)) -eq 0 ]; then
				while [ $((fn & 1)) -eq 0 ] && [ "$fn" -ne 0 ]; do fn=$((fn >> 1)) sn=$((sn >> 1)); done
			fi
		else
			sr=$(node "$sr" "$c")
		fi
		fn=$((fn >> 1)) sn=$((sn >> 1))
	done
	[ "$fr" = "$first" ] && [ "$sr" = "$second" ] && [ "$sn" -eq 0 ]
}

M="$work/manifeste.flat"
flat "$manifest" "$M"
[ "$(get "$M" type)" = '"spie-hub/recu-de-livraison/v2"' ] || invalid "ce n'est pas un reçu de livraison du hub (type v2)"

# 1. The delivered file, beside the manifest, under the manifest's name for it (a bare name: never a path).
name=$(text "$(get "$M" fichier)")
case $name in '' | */* | . | ..) invalid "nom de fichier livré absent ou invalide dans le manifeste" ;; esac
case $manifest in */*) data=${manifest%/*}/$name ;; *) data=$name ;; esac
[ -f "$data" ] || invalid "fichier livré absent à côté du manifeste : $name"
digest=$(openssl dgst -sha256 -r < "$data" | awk '{ print $1 }')
[ "\"$digest\"" = "$(get "$M" sha256)" ] || invalid "le fichier $name ne correspond pas au manifeste signé (SHA-256 différent)"

# 2. The manifest's signature over its canonical JSON body.
awk -v mode=canon -v sans=signature "$JSON_AWK" "$manifest" > "$work/corps.json" || exit 2
[ "$(get "$M" signature.algorithme)" = '"Ed25519"' ] || invalid "algorithme de signature du manifeste inconnu"
text "$(get "$M" signature.valeur)" | openssl base64 -d -A > "$work/manifeste.sig" 2>/dev/null
openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$work/corps.json" -sigfile "$work/manifeste.sig" > /dev/null 2>&1 ||
	invalid "signature du manifeste invalide : il a été modifié ou n'a pas été émis par le hub (clé publiée)"

# 3. The signed tree head.
verify_head "$M" journal.tete "tête du reçu"
size=$head_size root=$head_root

# 4. The delivery's log entry: its chain hash, and that it describes this file for this recipient.
E=journal.entree
for field in seq ts run_id event flow recipient subject payload prev_hash hash; do
	[ -n "$(get "$M" "$E.$field")" ] || invalid "entrée du journal incomplète dans le reçu ($field)"
done
seq=$(get "$M" "$E.seq")
prev=$(text "$(get "$M" "$E.prev_hash")")
hash=$(text "$(get "$M" "$E.hash")")
is_uint "$seq" && is_hex64 "$prev" && is_hex64 "$hash" || invalid "entrée du journal illisible dans le reçu"
chain=$({
	printf '%s[%s' "$prev" "$seq"
	for field in ts run_id event flow recipient subject payload; do printf ',%s' "$(get "$M" "$E.$field")"; done
	printf ']'
} | sha256)
[ "$chain" = "$hash" ] || invalid "l'entrée du journal jointe au reçu ne correspond pas à son empreinte (modifiée)"
text "$(get "$M" "$E.payload")" > "$work/payload.json"
flat "$work/payload.json" "$work/payload.flat"
[ "$(get "$M" "$E.event")" = '"livraison"' ] && [ "$(get "$M" "$E.recipient")" = "$(get "$M" destinataire)" ] &&
	[ "$(get "$work/payload.flat" sha256)" = "$(get "$M" sha256)" ] &&
	[ "$(get "$work/payload.flat" fichier)" = "$(get "$M" fichier)" ] ||
	invalid "l'entrée du journal jointe ne décrit pas ce fichier pour ce destinataire"

# 5. Inclusion of the entry (leaf index seq - 1) in the signed head: RFC 9162 §2.1.3.2.
index=$(get "$M" journal.inclusion.index)
count=$(get "$M" journal.inclusion.chemin.#)
is_uint "$index" && is_uint "$count" && [ "$index" -eq $((seq - 1)) ] && [ "$index" -lt "$size" ] ||
	invalid "la livraison n'est pas prouvée dans le journal signé (index d'inclusion faux pour la tête de taille $size)"
fn=$index sn=$((size - 1)) r=$(leaf "$hash") i=0
while [ "$i" -lt "$count" ]; do
	p=$(text "$(get "$M" "journal.inclusion.chemin.$i")"); i=$((i + 1))
	is_hex64 "$p" && [ "$sn" -ne 0 ] || { sn=-1; break; }
	if [ $((fn & 1)) -eq 1 ] || [ "$fn" -eq "$sn" ]; then
		r=$(node "$p" "$r")
		if [ $((fn & 1)) -eq 0 ]; then
			while [ $((fn & 1)) -eq 0 ] && [ "$fn" -ne 0 ]; do fn=$((fn >> 1)) sn=$((sn >> 1)); done
		fi
	else
		r=$(node "$r" "$p")
	fi
	fn=$((fn >> 1)) sn=$((sn >> 1))
done
[ "$sn" -eq 0 ] && [ "$r" = "$root" ] ||
	invalid "la livraison n'est pas prouvée dans le journal signé (preuve d'inclusion fausse pour la tête de taille $size)"

# 6. The receipt's consistency proof from the recipient's previous head.
since_size="" since_root=""
if [ -n "$(get "$M" journal.coherence.depuis.taille)" ]; then
	verify_head "$M" journal.coherence.depuis "tête précédente du reçu"
	since_size=$head_size since_root=$head_root
	consistent "$since_size" "$size" "$since_root" "$root" "$M" journal.coherence.chemin ||
		invalid "le journal ne prolonge plus la tête de taille $since_size du reçu précédent (réécrit, tronqué ou réordonné)"
fi

# 7. A head the recipient kept (an earlier receipt, or a head file): the log must still extend it.
extends=""
if [ -n "$kept" ]; then
	K="$work/gardee.flat"
	flat "$kept" "$K"
	if [ -n "$(get "$K" journal.tete.taille)" ]; then verify_head "$K" journal.tete "tête gardée"
	elif [ -n "$(get "$K" tete.taille)" ]; then verify_head "$K" tete "tête gardée"
	elif [ -n "$(get "$K" taille)" ]; then verify_head "$K" "" "tête gardée"
	else invalid "aucune tête de journal dans le fichier gardé"; fi
	old_size=$head_size old_root=$head_root
	if [ "$old_size" -gt "$size" ]; then
		invalid "tête gardée : le journal a $size entrée(s), la tête gardée en attestait $old_size (tronqué)"
	elif [ "$old_size" -eq "$size" ]; then
		[ "$old_root" = "$root" ] || invalid "tête gardée : même taille ($old_size), racine différente (journal réécrit)"
	elif [ "$old_size" = "$since_size" ]; then
		[ "$since_root" = "$old_root" ] || invalid "tête gardée : la tête de taille $old_size que le hub présente n'est plus celle que vous avez gardée (journal réécrit avant elle, puis re-signé)"
	elif [ -n "$proof" ]; then
		P="$work/coherence.flat"
		flat "$proof" "$P"
		[ "$(get "$P" type)" = '"spie-hub/preuve-de-coherence/v1"' ] && [ "$(get "$P" depuis)" = "$old_size" ] ||
			invalid "preuve de cohérence depuis la taille $(get "$P" depuis), la tête gardée a la taille $old_size"
		verify_head "$P" tete "tête de la preuve de cohérence"
		consistent "$old_size" "$head_size" "$old_root" "$head_root" "$P" chemin ||
			invalid "tête gardée : le journal ne prolonge plus la tête de taille $old_size que vous avez gardée : réécrit, tronqué ou réordonné avant elle"
		# The proof must end at THIS receipt's head: a proof to another head (even the kept one itself) proves
		# nothing about the log this receipt's delivery is in.
		[ "$head_size" -eq "$size" ] && [ "$head_root" = "$root" ] ||
			invalid "la preuve de cohérence n'aboutit pas à la tête de ce reçu (taille $size) : demandez-la avec spie-hub audit coherence --depuis $old_size --vers $size"
	else
		invalid "tête gardée : aucune preuve de cohérence depuis la taille $old_size dans ce reçu ; demandez-la au hub (spie-hub audit coherence --depuis $old_size --vers $size) et passez-la avec --coherence"
	fi
	extends=" ; le journal prolonge la tête gardée (taille $old_size)"
fi

printf 'reçu valide : %s, signé par le hub ; livraison prouvée dans le journal signé (taille %s, racine %s)%s\n' \
	"$name" "$size" "$root" "$extends"
exit 0
